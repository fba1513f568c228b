"""The wire format, in one package that both apps import.

- ``codec``: value vectors <-> numpy arrays (float32 | float16 | bfloat16 | int8 + scales), strict decoding;
- ``index``: the index codec (int32 positions beside values) of index-carrying formats;
- ``protocol``: record names, array keys, message types, :class:`~wire.protocol.UpdateCodec` (the
  values-only update format every aligned method uses; a method may supply its own);
- ``records``: the Flower edge (plain parts <-> ``RecordDict``, measured message bytes); the only
  module here that imports ``flwr``.
"""
