"""Reading files the library did not write itself: checksums (:mod:`.hashing`) and bounded,
validated reads of JSON, ``.npy`` and safetensors headers (:mod:`.untrusted`)."""
