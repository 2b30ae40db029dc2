"""The DICOM SOP Class UIDs rtrai reads and writes (PS3.4 Annex B), in one place for the readers and the writer."""

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
RTDOSE_CLASS = "1.2.840.10008.5.1.4.1.1.481.2"
RTPLAN_CLASS = "1.2.840.10008.5.1.4.1.1.481.5"
DETACHED_STUDY_CLASS = "1.2.840.10008.3.1.2.3.1"  # what RT Referenced Study Sequence items conventionally reference
