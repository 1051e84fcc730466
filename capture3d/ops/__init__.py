"""Operations around the stages: capture inboxes (local folders or S3), provenance manifests,
file locks and the DVC artifact store. No Prefect here: the flows in ``capture3d.flows`` use these."""
