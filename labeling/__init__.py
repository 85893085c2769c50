"""The labeling web page: labelers confirm or correct the windows the model was unsure about."""
