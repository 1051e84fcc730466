"""Point-cloud registration: scan I/O, preprocessing, pairwise hypotheses, verification, multiway graphs, evaluation."""
