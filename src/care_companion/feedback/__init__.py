"""The feedback loop: radiologists' verdicts, the images they label, and (later) retraining data sets."""
