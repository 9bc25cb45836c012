"""The Open Inference Protocol (KServe v2) over the model repository: its models, their
metadata, and inference requests and responses, JSON and binary.

Every repository model NAME is two protocol models, NAME-encoder and NAME-decoder. The
version of both is the first 12 hex digits of the weights' SHA-256, so a hot swap is a
new version. Everything a request says is checked here, before any model work, and a
request the protocol cannot carry out is a 400 (``BadTensor``): the body is not JSON, a
tensor has the wrong name, datatype or shape, or its data the wrong number of values or
bytes. Counts over a configured limit and values out of range get the existing routes'
422, so both APIs refuse the same requests the same way.

The binary tensor data extension, both ways: an input's ``binary_data_size`` names how
many bytes after the JSON header (``Inference-Header-Content-Length`` bytes long) are
its data, and an output asked for with ``binary_data`` (or every output, with the request
parameter ``binary_data_output``) comes back the same way. Binary FP32 is little-endian,
row major; a BYTES element is a 4-byte little-endian length, then the bytes.

The modules: protocol.py (the constants, the protocol's models and their names and
versions), parsing.py (an inference request's form), tensors.py (a request checked
against its model, and its tensors' values) and responses.py (the inference response).
server/routes/oip.py serves the protocol; server/errors.py writes its ``{"error": ...}``
bodies.
"""
