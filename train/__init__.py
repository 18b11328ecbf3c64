"""fsac.train: CLIP-FSAC on the workstation (backbone, prompts, synthetic anomalies, model,
two-stage training, evaluation, explanation maps). Importing this package imports no torch;
its modules do."""
