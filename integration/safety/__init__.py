"""The safety net around a draft: what the study's header says, and where the model's answer contradicts it.

* :mod:`integration.safety.facts`: :class:`~integration.safety.facts.StudyFacts`, the header facts a draft
  is checked against (sex, modality, body part, description, laterality and view per image, contrast agent)
  and the patient's identifiers, kept in memory only.
* :mod:`integration.safety.consistency`: per-finding contradictions between the draft and those facts
  (laterality, sex-specific anatomy, body region, modality words, contrast, cited images that do not exist).
* :mod:`integration.safety.identifiers`: the model's echo of the patient's name, ids, accession or birth
  date masked and flagged.
* :mod:`integration.safety.critical`: critical (actionable) result categories matched in the findings with
  medspaCy's ConText (negation, uncertainty, history, hypothesis) and from the model's urgency field.

Nothing here logs: the texts and headers it reads are patient data.
"""
