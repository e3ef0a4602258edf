// pacs-vlm study page viewer: every slice of every series, window/level, zoom and pan, the model's slices marked.
// The page lists each series' slices as data (data-slices: SOP Instance UIDs and frames, in order); this script
// asks the frame route for one rendered PNG at a time, at the size the view needs (never beyond the image's
// own), plus a few neighbours ahead.  Its state (series, slice, window, zoom, pan) is kept in the tab's
// sessionStorage, so the review buttons, which reload the page, do not reset it.  Without this script the
// page still shows one frame and links to the others.
(function () {
  "use strict";

  var figure = document.getElementById("viewer");
  var image = document.getElementById("viewer-image");
  var viewport = document.getElementById("viewport");
  if (!figure || !image || !viewport) { return; }

  var MAX_SIZE = 4096;
  var PREFETCH = 2;
  var PREFETCH_KEPT = 24;
  var ZOOM_STEP = 1.25;
  var MIN_ZOOM = 0.02;
  var MAX_ZOOM = 32;
  var WHEEL_STEP = 40;
  var study = figure.getAttribute("data-study");
  var storageKey = "pacsvlm-viewer:" + study;
  function byId(id) { return document.getElementById(id); }
  var slider = byId("viewer-slider");
  var marks = byId("slider-marks");
  var position = byId("viewer-position");
  var seenBadge = byId("viewer-seen");
  var caption = byId("viewer-caption");
  var windowLabel = byId("viewer-window");
  var zoomLabel = byId("viewer-zoom");
  var wlMode = byId("wl-mode");
  var presetButtons = Array.prototype.slice.call(figure.querySelectorAll("button[data-preset]"));
  var presets = {};
  presetButtons.forEach(function (button) {
    if (button.hasAttribute("data-center")) {
      presets[button.getAttribute("data-preset")] = {
        center: parseFloat(button.getAttribute("data-center")), width: parseFloat(button.getAttribute("data-width"))
      };
    }
  });

  var choices = Array.prototype.slice.call(document.querySelectorAll("[data-series-choice]"));
  var series = choices.map(function (link) {
    var slices = (link.getAttribute("data-slices") || "").split(" ").filter(Boolean).map(function (item) {
      var parts = item.split("/");
      return { sop: parts[0], frame: parts.length > 1 ? parseInt(parts[1], 10) : 1 };
    });
    var seen = {};
    (link.getAttribute("data-seen") || "").split(" ").filter(Boolean).forEach(function (item) {
      var parts = item.split(":");
      seen[parseInt(parts[0], 10)] = parts[1].split(".");
    });
    return {
      link: link, uid: link.getAttribute("data-series-uid"), name: link.getAttribute("data-name"),
      ct: link.getAttribute("data-modality") === "CT", slices: slices, seen: seen, info: null, asked: false
    };
  });
  if (!series.length) { return; }

  var state = {
    series: Math.min(series.length - 1, parseInt(figure.getAttribute("data-series-index"), 10) || 0),
    slice: parseInt(figure.getAttribute("data-slice-index"), 10) || 0,
    window: figure.getAttribute("data-window") || "default",
    zoom: null,  // null: fit; else CSS pixels per image pixel
    panX: 0,
    panY: 0
  };

  function clamp(value, low, high) { return Math.max(low, Math.min(high, value)); }
  function current() { return series[state.series]; }
  function dpr() { return window.devicePixelRatio || 1; }

  // ---- state kept across the review buttons' reloads ----------------------
  function save() {
    var item = current().slices[state.slice];
    try {
      sessionStorage.setItem(storageKey, JSON.stringify({
        series: current().uid, sop: item.sop, frame: item.frame, window: state.window,
        zoom: state.zoom, panX: state.panX, panY: state.panY
      }));
    } catch (ignored) { /* storage off: the viewer still works, it just forgets */ }
  }

  function restore() {
    if (new URLSearchParams(location.search).has("image")) { return; }  // a link asked for a frame
    var saved;
    try { saved = JSON.parse(sessionStorage.getItem(storageKey) || "null"); } catch (ignored) { return; }
    if (!saved) { return; }
    series.forEach(function (each, index) {
      if (each.uid !== saved.series) { return; }
      var found = each.slices.findIndex(function (item) { return item.sop === saved.sop && item.frame === saved.frame; });
      if (found < 0) { return; }
      state.series = index;
      state.slice = found;
      var known = saved.window === "default" || Object.prototype.hasOwnProperty.call(presets, saved.window);
      if (typeof saved.window === "string" && (known || /^-?\d{1,8}(\.\d)?,\d{1,8}(\.\d)?$/.test(saved.window))) {
        state.window = saved.window;
      }
      state.zoom = typeof saved.zoom === "number" ? saved.zoom : null;
      state.panX = Number(saved.panX) || 0;
      state.panY = Number(saved.panY) || 0;
    });
  }

  // ---- sizes and URLs -------------------------------------------------------
  function nativeSize() {
    var info = current().info;
    if (info) { return { w: info.columns, h: info.rows }; }
    if (image.naturalWidth) { return { w: image.naturalWidth, h: image.naturalHeight }; }
    return null;
  }

  function fitScale(size) {
    var box = viewport.getBoundingClientRect();
    return Math.min(box.width / size.w, box.height / size.h) || 1;
  }

  function scale() {
    var size = nativeSize();
    if (!size) { return 1; }
    return state.zoom === null ? fitScale(size) : state.zoom;
  }

  function wantedSize() {
    var size = nativeSize();
    var longest = size ? Math.max(size.w, size.h) : 1024;
    var need = Math.ceil(longest * scale() * dpr());
    var bucket = 256;
    while (bucket < need && bucket < MAX_SIZE) { bucket *= 2; }
    var cap = current().info ? Math.max(16, longest) : MAX_SIZE;
    return clamp(Math.min(bucket, cap), 16, MAX_SIZE);
  }

  function frameUrl(stack, index, size) {
    var item = stack.slices[index];
    return "/studies/" + study + "/instances/" + item.sop + "/frames/" + item.frame + ".png?size=" + size +
      "&window=" + encodeURIComponent(state.window).replace(/%2C/g, ",");
  }

  // ---- drawing --------------------------------------------------------------
  function layout() {
    var size = nativeSize();
    var s = scale();
    if (size) {
      var box = viewport.getBoundingClientRect();
      var width = size.w * s;
      var height = size.h * s;
      if (state.zoom === null) { state.panX = 0; state.panY = 0; }
      image.style.width = width + "px";
      image.style.height = height + "px";
      image.style.transform = "translate(" + ((box.width - width) / 2 + state.panX) + "px, " +
        ((box.height - height) / 2 + state.panY) + "px)";
      image.classList.add("placed");
      image.classList.toggle("pixelated", state.zoom !== null && s * dpr() > 2);  // zoomed in: see the pixels
    }
    var percent = Math.round(s * dpr() * 100) + "%";
    if (zoomLabel) { zoomLabel.textContent = state.zoom === null ? "Fit (" + percent + ")" : percent; }
  }

  function windowValues() {
    if (state.window === "default") {
      var info = current().info;
      return info && info.window ? info.window : null;
    }
    if (presets[state.window]) { return presets[state.window]; }
    var parts = state.window.split(",");
    return { center: parseFloat(parts[0]), width: parseFloat(parts[1]) };
  }

  function showWindow() {
    var info = current().info;
    var values = windowValues();
    var text;
    if (info && info.colour) {
      text = "Window: not applicable (colour image)";
    } else {
      var name = state.window.indexOf(",") >= 0 ? "custom" : state.window.replace("_", " ");
      text = "Window: " + name + (values ? " · C " + round(values.center) + " / W " + round(values.width) : "");
    }
    if (windowLabel) { windowLabel.textContent = text; }
    presetButtons.forEach(function (button) {
      var preset = button.getAttribute("data-preset");
      button.setAttribute("aria-pressed", String(preset === state.window));
      button.disabled = preset !== "default" && !current().ct;  // the presets are Hounsfield units
    });
  }

  function round(value) { return Math.abs(value) >= 10 ? Math.round(value) : Math.round(value * 10) / 10; }

  function showMarks() {
    if (!marks) { return; }
    var stack = current();
    marks.textContent = "";
    var last = Math.max(1, stack.slices.length - 1);
    Object.keys(stack.seen).forEach(function (key) {
      var index = parseInt(key, 10);
      var mark = document.createElement("button");
      mark.type = "button";
      mark.className = "slider-mark";
      mark.setAttribute("data-slice", String(index));
      mark.setAttribute("aria-label", "Slice " + (index + 1) + ": seen by the model as image " + stack.seen[key].join(", "));
      mark.title = mark.getAttribute("aria-label");
      mark.style.left = (stack.slices.length > 1 ? index / last * 100 : 50) + "%";
      mark.addEventListener("click", function () { goTo(state.series, index); });
      marks.appendChild(mark);
    });
  }

  function describe() {
    var stack = current();
    var count = stack.slices.length;
    var where = "Slice " + (state.slice + 1) + " of " + count;
    var seen = stack.seen[state.slice];
    image.alt = stack.name + ", slice " + (state.slice + 1) + " of " + count;
    if (slider) {
      slider.max = String(count);
      slider.value = String(state.slice + 1);
      slider.setAttribute("aria-valuetext", "slice " + (state.slice + 1) + " of " + count);
    }
    if (position) { position.textContent = where; }
    if (seenBadge) {
      seenBadge.hidden = !seen;
      seenBadge.textContent = seen ? "Seen by the model · image " + seen.join(", ") : "";
    }
    if (caption) { caption.textContent = stack.name + ", slice " + (state.slice + 1) + " of " + count + (seen ? " · model image " + seen.join(", ") : ""); }
    choices.forEach(function (link, index) {
      if (index === state.series) { link.setAttribute("aria-current", "true"); } else { link.removeAttribute("aria-current"); }
    });
  }

  var prefetched = [];
  function prefetch() {
    var stack = current();
    var size = wantedSize();
    for (var distance = 1; distance <= PREFETCH; distance += 1) {
      [state.slice + distance, state.slice - distance].forEach(function (index) {
        if (index < 0 || index >= stack.slices.length) { return; }
        var url = frameUrl(stack, index, size);
        if (prefetched.some(function (kept) { return kept.url === url; })) { return; }
        var fetched = new Image();
        fetched.src = url;
        prefetched.push({ url: url, image: fetched });
      });
    }
    while (prefetched.length > PREFETCH_KEPT) { prefetched.shift(); }
  }

  function askInfo(stack) {
    if (stack.asked) { return; }
    stack.asked = true;
    var item = stack.slices[Math.floor(stack.slices.length / 2)];
    fetch("/studies/" + study + "/instances/" + item.sop + "/frames/" + item.frame + "/info", { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (info) {
        stack.info = info;
        if (stack === current()) { render({ quiet: true }); }
      })
      .catch(function () { /* the image still shows; zoom uses its own size */ });
  }

  var dragging = null;
  function render(options) {
    options = options || {};
    var stack = current();
    state.slice = clamp(state.slice, 0, stack.slices.length - 1);
    askInfo(stack);
    layout();
    var src = frameUrl(stack, state.slice, wantedSize());
    if (image.getAttribute("src") !== src) { image.src = src; }
    var item = stack.slices[state.slice];
    image.setAttribute("data-sop", item.sop);
    image.setAttribute("data-frame", String(item.frame));
    describe();
    showWindow();
    if (!dragging && stack.info) { prefetch(); }  // at the size the view will keep asking for
    save();
    if (!options.quiet) {
      figure.dispatchEvent(new CustomEvent("viewer:slice", {
        detail: {
          index: state.slice, count: stack.slices.length, window: state.window,
          origin: options.origin || "viewer", initial: !!options.initial
        }
      }));
    }
  }

  // ---- navigation -----------------------------------------------------------
  function goTo(seriesIndex, sliceIndex, origin) {
    if (seriesIndex !== state.series) {
      state.series = seriesIndex;
      state.zoom = null;
      showMarks();
    }
    state.slice = clamp(sliceIndex, 0, current().slices.length - 1);
    render({ origin: origin });
  }

  function step(delta) { goTo(state.series, state.slice + delta); }

  function show(sop, frame, windowName) {
    for (var index = 0; index < series.length; index += 1) {
      var found = series[index].slices.findIndex(function (item) { return item.sop === sop && item.frame === frame; });
      if (found >= 0) {
        if (windowName && windowName !== "default") { state.window = windowName; }
        goTo(index, found);
        return true;
      }
    }
    return false;
  }

  function setWindow(name) {
    state.window = name;
    render();
  }

  function zoomTo(next, clientX, clientY) {
    var size = nativeSize();
    if (!size) { return; }
    var box = viewport.getBoundingClientRect();
    var old = scale();
    next = clamp(next, MIN_ZOOM, MAX_ZOOM);
    var x = clientX === undefined ? box.width / 2 : clientX - box.left;
    var y = clientY === undefined ? box.height / 2 : clientY - box.top;
    var left = (box.width - size.w * old) / 2 + state.panX;
    var top = (box.height - size.h * old) / 2 + state.panY;
    var imageX = (x - left) / old;
    var imageY = (y - top) / old;
    state.panX = x - imageX * next - (box.width - size.w * next) / 2;
    state.panY = y - imageY * next - (box.height - size.h * next) / 2;
    state.zoom = next;
    render({ quiet: true });
  }

  function fit() { state.zoom = null; render({ quiet: true }); }
  function full() { state.panX = 0; state.panY = 0; state.zoom = 1 / dpr(); render({ quiet: true }); }

  // ---- mouse, wheel and keys --------------------------------------------------
  var wheelTotal = 0;
  viewport.addEventListener("wheel", function (event) {
    event.preventDefault();
    if (event.ctrlKey || event.metaKey) {
      zoomTo(scale() * (event.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP), event.clientX, event.clientY);
      return;
    }
    if (event.deltaMode !== 0) { step(event.deltaY > 0 ? 1 : -1); return; }
    wheelTotal = Math.sign(wheelTotal) === Math.sign(event.deltaY) ? wheelTotal + event.deltaY : event.deltaY;
    if (Math.abs(wheelTotal) >= WHEEL_STEP) {
      step(wheelTotal > 0 ? 1 : -1);
      wheelTotal = 0;
    }
  }, { passive: false });

  viewport.addEventListener("contextmenu", function (event) { event.preventDefault(); });

  var windowTimer = null;
  function windowSoon() {
    showWindow();
    if (windowTimer) { return; }
    windowTimer = setTimeout(function () { windowTimer = null; render({ quiet: true }); }, 120);
  }

  viewport.addEventListener("pointerdown", function (event) {
    var levelling = event.button === 2 || (event.button === 0 && wlMode && wlMode.getAttribute("aria-pressed") === "true");
    if (event.button !== 0 && event.button !== 2) { return; }
    viewport.focus();
    var info = current().info;
    if (levelling && info && info.colour) { return; }
    var start = windowValues() || { center: 128, width: 256 };
    dragging = {
      levelling: levelling, x: event.clientX, y: event.clientY, center: start.center, width: start.width,
      panX: state.panX, panY: state.panY
    };
    viewport.setPointerCapture(event.pointerId);
    viewport.classList.add(levelling ? "levelling" : "panning");
    event.preventDefault();
  });

  viewport.addEventListener("pointermove", function (event) {
    if (!dragging) { return; }
    var dx = event.clientX - dragging.x;
    var dy = event.clientY - dragging.y;
    if (dragging.levelling) {
      var rate = Math.max(0.1, dragging.width / 256);
      var width = Math.max(1, dragging.width + dx * rate);
      var center = dragging.center - dy * rate;
      state.window = round(center) + "," + round(width);
      windowSoon();
    } else {
      if (state.zoom === null) { state.zoom = scale(); }  // a panned image stays where it was put
      state.panX = dragging.panX + dx;
      state.panY = dragging.panY + dy;
      layout();
    }
  });

  function endDrag(event) {
    if (!dragging) { return; }
    var levelling = dragging.levelling;
    dragging = null;
    viewport.classList.remove("levelling", "panning");
    if (viewport.hasPointerCapture(event.pointerId)) { viewport.releasePointerCapture(event.pointerId); }
    if (windowTimer) { clearTimeout(windowTimer); windowTimer = null; }
    render({ quiet: !levelling });
  }
  viewport.addEventListener("pointerup", endDrag);
  viewport.addEventListener("pointercancel", endDrag);

  viewport.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var count = current().slices.length;
    switch (event.key) {
      case "ArrowUp": case "ArrowLeft": step(-1); break;
      case "ArrowDown": case "ArrowRight": step(1); break;
      case "PageUp": step(-10); break;
      case "PageDown": step(10); break;
      case "Home": goTo(state.series, 0); break;
      case "End": goTo(state.series, count - 1); break;
      case "+": zoomTo(scale() * ZOOM_STEP); break;
      case "-": zoomTo(scale() / ZOOM_STEP); break;
      case "f": fit(); break;
      case "=": full(); break;
      default: return;
    }
    event.preventDefault();
    event.stopPropagation();
  });

  image.addEventListener("load", function () { if (!current().info) { layout(); } });
  if (slider) {
    slider.addEventListener("input", function () { goTo(state.series, parseInt(slider.value, 10) - 1); });
  }
  [["slice-prev", -1], ["slice-next", 1]].forEach(function (pair) {
    var link = byId(pair[0]);
    if (link) {
      link.addEventListener("click", function (event) { event.preventDefault(); step(pair[1]); });
    }
  });
  choices.forEach(function (link, index) {
    link.addEventListener("click", function (event) {
      if (event.ctrlKey || event.metaKey || event.shiftKey) { return; }
      event.preventDefault();
      goTo(index, index === state.series ? state.slice : 0);
      viewport.focus();
    });
  });
  document.querySelectorAll("a[data-goto-series]").forEach(function (link) {
    link.addEventListener("click", function (event) {
      if (event.ctrlKey || event.metaKey || event.shiftKey) { return; }
      event.preventDefault();
      var index = series.findIndex(function (each) { return each.uid === link.getAttribute("data-goto-series"); });
      if (index >= 0) { goTo(index, parseInt(link.getAttribute("data-goto-slice"), 10)); }
      viewport.focus();
    });
  });
  presetButtons.forEach(function (button) {
    button.addEventListener("click", function () { setWindow(button.getAttribute("data-preset")); });
  });
  if (wlMode) {
    wlMode.addEventListener("click", function () {
      wlMode.setAttribute("aria-pressed", String(wlMode.getAttribute("aria-pressed") !== "true"));
    });
  }
  [["zoom-in", function () { zoomTo(scale() * ZOOM_STEP); }], ["zoom-out", function () { zoomTo(scale() / ZOOM_STEP); }],
    ["zoom-fit", fit], ["zoom-full", full]].forEach(function (pair) {
    var button = byId(pair[0]);
    if (button) { button.addEventListener("click", pair[1]); }
  });
  window.addEventListener("resize", function () { render({ quiet: true }); });

  // what review.js asks of the viewer (model images, linked scrolling with a prior)
  window.pacsViewer = {
    show: show,
    step: step,
    goToFraction: function (fraction, origin) {
      goTo(state.series, Math.round(fraction * (current().slices.length - 1)), origin);
    },
    windowName: function () { return state.window; }
  };

  restore();
  showMarks();
  render({ initial: true });
})();
