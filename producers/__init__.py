"""What puts audio into Kafka: file replay, microphone, load generator.

Imports only the wire format (and audio decoding for files) from streamproc,
never feature or model code, so an edge producer installs without librosa.
"""
