"""Files on disk: reading what the library did not write itself, with checksums
(:mod:`.hashing`) and bounded, validated reads of JSON, ``.npy`` and safetensors headers
(:mod:`.untrusted`); writing files and folders atomically (:mod:`.atomic`)."""
