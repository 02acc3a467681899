"""The model zoo: build real TFLite models (``build``) and measure what they cost (``profile``)."""
