// pacs-vlm review pages: keyboard shortcuts, image highlighting, a warning before leaving unsaved text.
// The pages work without this file: every action is a plain form or link (the study page's editor is one
// form, so every box's text is saved with whatever button is pressed).
(function () {
  "use strict";

  // Whether the keys go into a box (a checkbox or a button with the focus takes no text: shortcuts still work).
  function typing(target) {
    if (!(target instanceof HTMLElement)) { return false; }
    if (target.isContentEditable || /^(TEXTAREA|SELECT)$/.test(target.tagName)) { return true; }
    return target instanceof HTMLInputElement && !/^(checkbox|radio|button|submit|reset)$/.test(target.type);
  }

  // ---- help overlay -------------------------------------------------------
  var help = document.getElementById("help");
  var helpButton = document.getElementById("help-button");
  function toggleHelp(show) {
    if (!help) { return; }
    var visible = show === undefined ? help.hidden : show;
    help.hidden = !visible;
    if (helpButton) { helpButton.setAttribute("aria-expanded", String(visible)); }
    if (visible) {
      var close = document.getElementById("help-close");
      if (close) { close.focus(); }
    } else if (helpButton) {
      helpButton.focus();
    }
  }
  if (helpButton) { helpButton.addEventListener("click", function () { toggleHelp(); }); }
  var helpClose = document.getElementById("help-close");
  if (helpClose) { helpClose.addEventListener("click", function () { toggleHelp(false); }); }

  // ---- images: the current study's viewer (viewer.js) and each prior's large view, highlighting ----
  // A tile with data-viewer="prior-N" belongs to prior N's large view; others to the current study's viewer.
  // The priors' large views use the current view's window; where the current view and a prior both show a
  // volume (a prior's data-stack: its series' slices in order) they scroll together by relative position.
  var tiles = Array.prototype.slice.call(document.querySelectorAll("[data-tile]"));
  var panes = Array.prototype.slice.call(document.querySelectorAll("[data-viewer-pane]")).map(function (figure) {
    var image = figure.querySelector("img");
    var stack = (figure.getAttribute("data-stack") || "").split(" ").filter(Boolean);
    return {
      id: figure.id, figure: figure, image: image, caption: figure.querySelector("figcaption"), stack: stack,
      index: image ? stack.indexOf(image.getAttribute("data-sop")) : -1, study: figure.getAttribute("data-study"),
      size: figure.getAttribute("data-size"), prior: figure.hasAttribute("data-prior")
    };
  });
  var main = panes.filter(function (pane) { return !pane.prior; })[0];
  var viewer = main && main.image;
  var linkScroll = document.getElementById("link-scroll");

  function paneOf(tile) {
    var id = tile.getAttribute("data-viewer") || "viewer";
    return panes.filter(function (pane) { return pane.id === id; })[0];
  }

  function windowOf(src) {
    return new URL(src, location.href).searchParams.get("window") || "default";
  }

  function withWindow(src, name) {
    var url = new URL(src, location.href);
    url.searchParams.set("window", name);
    return url.pathname + url.search;
  }

  function mainWindow() {
    return window.pacsViewer ? window.pacsViewer.windowName() : (viewer ? windowOf(viewer.getAttribute("src")) : "default");
  }

  function setWindow(name) {
    panes.forEach(function (pane) {
      if (pane.prior && pane.image) { pane.image.src = withWindow(pane.image.getAttribute("src"), name); }
    });
  }

  function markCurrent(pane, tile) {
    tiles.forEach(function (other) {
      if (paneOf(other) !== pane) { return; }
      other.classList.toggle("current", other === tile);
      if (other === tile) { other.setAttribute("aria-current", "true"); } else { other.removeAttribute("aria-current"); }
    });
  }

  function show(tile) {
    var pane = tile && paneOf(tile);
    if (!pane || !pane.image) { return; }
    if (!pane.prior) {
      // the current study: the viewer goes to that slice (in the model's window when it saw a preset)
      if (window.pacsViewer) {
        window.pacsViewer.show(tile.getAttribute("data-sop"), parseInt(tile.getAttribute("data-frame"), 10) || 1,
          tile.getAttribute("data-window"));
      }
      markCurrent(pane, tile);
      return;
    }
    var large = tile.getAttribute("data-large");
    pane.image.src = withWindow(large, mainWindow());
    pane.image.alt = tile.getAttribute("data-label") || "";
    pane.image.setAttribute("data-sop", tile.getAttribute("data-sop") || "");
    pane.index = pane.stack.indexOf(tile.getAttribute("data-sop"));
    if (pane.caption) {
      var numbers = (tile.getAttribute("data-images") || "").trim();
      pane.caption.textContent = (tile.getAttribute("data-label") || "") + (numbers ? " · model image " + numbers.split(" ").join(", ") : "");
    }
    markCurrent(pane, tile);
  }

  function slice(pane, index) {
    if (!pane.image || pane.stack.length < 2) { return; }
    pane.index = Math.max(0, Math.min(pane.stack.length - 1, index));
    var sop = pane.stack[pane.index];
    pane.image.src = "/studies/" + pane.study + "/instances/" + sop + "/frames/1.png?size=" + pane.size + "&window=" + encodeURIComponent(mainWindow());
    pane.image.setAttribute("data-sop", sop);
    if (pane.caption) { pane.caption.textContent = "Slice " + (pane.index + 1) + " of " + pane.stack.length; }
  }

  // Scroll the other views to the same relative position as ``source`` (index of count); the current study's
  // viewer tells its moves with a viewer:slice event.
  function follow(source, index, count) {
    if (!linkScroll || !linkScroll.checked || count < 2 || index < 0) { return; }
    var position = index / (count - 1);
    panes.forEach(function (pane) {
      if (pane === source) { return; }
      if (!pane.prior) {
        if (window.pacsViewer) { window.pacsViewer.goToFraction(position, "prior"); }
      } else if (pane.stack.length > 1) {
        slice(pane, Math.round(position * (pane.stack.length - 1)));
      }
    });
  }

  function scrollSlices(pane, delta) {
    if (!pane) { return; }
    if (!pane.prior) {
      if (window.pacsViewer) { window.pacsViewer.step(delta); }
      return;
    }
    if (pane.stack.length < 2) { return; }
    slice(pane, (pane.index < 0 ? 0 : pane.index) + delta);
    follow(pane, pane.index, pane.stack.length);
  }

  if (main) {
    var lastWindow = null;
    main.figure.addEventListener("viewer:slice", function (event) {
      var detail = event.detail || {};
      if (lastWindow !== null && detail.window !== lastWindow) { setWindow(detail.window); }
      lastWindow = detail.window;
      if (!detail.initial && detail.origin !== "prior") { follow(main, detail.index, detail.count); }
    });
  }

  panes.forEach(function (pane) {
    if (!pane.prior || !pane.image || pane.stack.length < 2) { return; }
    pane.image.addEventListener("wheel", function (event) {
      event.preventDefault();
      scrollSlices(pane, event.deltaY > 0 ? 1 : -1);
    }, { passive: false });
  });

  function highlight(numbers) {
    var wanted = {};
    numbers.forEach(function (n) { if (n) { wanted[n] = true; } });
    var first = null;
    tiles.forEach(function (tile) {
      var mine = (tile.getAttribute("data-images") || "").split(" ");
      var hit = mine.some(function (n) { return wanted[n]; });
      tile.classList.toggle("highlight", hit);
      if (hit && !first) { first = tile; }
    });
    return first;
  }

  tiles.forEach(function (tile) {
    tile.addEventListener("click", function (event) {
      if (event.ctrlKey || event.metaKey || event.shiftKey) { return; }
      event.preventDefault();
      show(tile);
    });
  });

  document.querySelectorAll("a.cite[data-image]").forEach(function (link) {
    link.addEventListener("click", function (event) {
      if (event.ctrlKey || event.metaKey || event.shiftKey) { return; }
      event.preventDefault();
      var first = highlight([link.getAttribute("data-image")]);
      if (first) { show(first); }
    });
  });

  function stepImage(delta) {
    var own = tiles.filter(function (tile) { return !tile.hasAttribute("data-viewer"); });  // the model's images
    if (!own.length) { return; }
    var index = own.findIndex(function (tile) { return tile.classList.contains("current"); });
    var next = index < 0 ? 0 : (index + delta + own.length) % own.length;
    show(own[next]);
  }

  // ---- findings (study page) or rows (worklist): j/k ----------------------
  var items = Array.prototype.slice.call(document.querySelectorAll("[data-nav-item]"));
  var current = -1;
  if (location.hash) {
    var target = document.getElementById(location.hash.slice(1));
    current = items.indexOf(target);
  }

  function select(index, quiet) {
    if (!items.length) { return; }
    current = Math.max(0, Math.min(items.length - 1, index));
    items.forEach(function (item, i) {
      var on = i === current;
      item.classList.toggle("current", on);
      var row = item.closest("tr");
      if (row) { row.classList.toggle("current", on); }
    });
    var item = items[current];
    item.focus();
    // coming back from a review button (quiet) the viewer keeps its slice: the finding's images are only marked
    if (item.hasAttribute("data-finding") && quiet) {
      highlight((item.getAttribute("data-images") || "").split(" "));
    } else if (item.hasAttribute("data-finding")) {
      var first = highlight((item.getAttribute("data-images") || "").split(" "));
      if (first) { show(first); }
    }
  }
  if (current >= 0) { select(current, true); }

  // ---- reading a worklist in order: sign and open next, attest, open next, where focus lands ----
  // Shift+S signs and opens the next study of the same worklist; x ticks the attestation; o opens the next
  // study to read (the worklist's "start reading", or the study page's "skip").  None of them fires while a
  // box has the focus (see the keydown handler): typing a capital S in a finding never signs.
  var reviewForm = document.getElementById("review-form");
  var signNext = document.getElementById("sign-next-button");
  var attest = document.getElementById("confirm-unreviewed");
  var openNext = document.getElementById("open-next") || document.getElementById("start-reading");
  var noMore = document.getElementById("no-more-studies");

  function signAndOpenNext() {
    if (!reviewForm || !signNext) { return false; }
    reviewForm.requestSubmit(signNext);
    return true;
  }

  function toggleAttestation() {
    if (!attest) { return false; }
    attest.checked = !attest.checked;
    return true;
  }

  function openNextStudy() {
    if (!openNext) { return false; }
    location.assign(openNext.href);
    return true;
  }

  // Focus after a page load: the worklist's "no more studies" notice when that is why we are here; on a study
  // opened to read (no part of the page asked for), its first finding, so j/a/x/Shift+S work at once.
  if (noMore && location.hash === "#no-more-studies") {
    noMore.focus();
  } else if (current < 0 && reviewForm && items.length && items[0].hasAttribute("data-finding")) {
    current = 0;
    items[0].classList.add("current");
    items[0].focus({ preventScroll: true });
    highlight((items[0].getAttribute("data-images") || "").split(" "));
  }

  function currentFinding() {
    var item = items[current];
    return item && item.hasAttribute("data-finding") ? item : null;
  }

  function press(selector) {
    var finding = currentFinding();
    var button = finding && finding.querySelector(selector);
    if (button) { button.click(); }
  }

  function focusField(id) {
    var field = document.getElementById(id);
    if (field) { field.focus(); field.scrollIntoView({ block: "center" }); }
  }

  // ---- unsaved text: warn before leaving the page -------------------------
  var submitting = false;
  function unsavedText() {
    return Array.prototype.some.call(document.querySelectorAll("main form textarea"), function (area) {
      return area.value !== area.defaultValue;
    });
  }
  document.querySelectorAll("main form").forEach(function (form) {
    form.addEventListener("submit", function () { submitting = true; });
  });
  window.addEventListener("beforeunload", function (event) {
    if (submitting || !unsavedText()) { return; }
    event.preventDefault();
    event.returnValue = "";  // older browsers need it set to show the prompt
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target instanceof HTMLTextAreaElement) {
      var form = event.target.form;
      if (form) {
        event.preventDefault();
        // the box's own button (Save edit, Add finding, Save impression ...) in the one review form
        var box = event.target.closest("details, .section, .add-finding");
        var button = box && box.querySelector('button[type="submit"]');
        if (button && button.form === form) { form.requestSubmit(button); } else { form.requestSubmit(); }
      }
      return;
    }
    if (event.key === "Escape") {
      if (help && !help.hidden) { toggleHelp(false); return; }
      if (typing(event.target)) { event.target.blur(); }
      return;
    }
    if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) { return; }
    switch (event.key) {
      case "?": toggleHelp(); break;
      case "j": select(current + 1); break;
      case "k": select(current < 0 ? 0 : current - 1); break;
      case "a": press('button[data-action="accept"]'); break;
      case "r": press('button[data-action="reject"]'); break;
      case "e": {
        var finding = currentFinding();
        var details = finding && finding.querySelector("details[data-edit]");
        if (!details) { return; }
        details.open = true;
        var area = details.querySelector("textarea");
        if (area) { area.focus(); area.setSelectionRange(area.value.length, area.value.length); }
        break;
      }
      case "S": if (!event.shiftKey || !signAndOpenNext()) { return; } break;
      case "x": if (!toggleAttestation()) { return; } break;
      case "o": if (!openNextStudy()) { return; } break;
      case "n": focusField("new-finding"); break;
      case "i": focusField("impression-text"); break;
      case "[": stepImage(-1); break;
      case "]": stepImage(1); break;
      case ",": scrollSlices(main, -1); break;
      case ".": scrollSlices(main, 1); break;
      default: {
        // 1 to 9: dismiss the consistency check showing that number on its Dismiss button
        var dismiss = /^[1-9]$/.test(event.key) && document.querySelector('button[data-dismiss-key="' + event.key + '"]');
        if (!dismiss) { return; }
        dismiss.click();
      }
    }
    event.preventDefault();
  });
})();
