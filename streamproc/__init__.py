"""audiostream's engine: wire format, window spec, rolling stream state,
feature extraction and model bundles. No Kafka, no I/O policy.

Import submodules directly (``from streamproc.wire import decode``): the
wire format needs only numpy, so an edge producer never imports librosa.
"""
__version__ = "0.1.0"
