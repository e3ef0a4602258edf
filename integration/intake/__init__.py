"""One way in for C-STORE, STOW-RS and photo uploads: header checks, the durable file, its row, its study.

The network (:mod:`integration.dicom`) and the web routes only hand data sets to
:class:`~integration.intake.intake.InstanceIntake` and map its named outcome to their answers.
"""
