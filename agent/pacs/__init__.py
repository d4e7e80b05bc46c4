"""PACS hooks: the agent as a DICOM node that scores chest X-rays and answers with an SR."""
