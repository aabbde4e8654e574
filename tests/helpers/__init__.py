"""What the tests import: tiny models and batches (:mod:`.models`), decoders and their tokenizer
(:mod:`.decoders`), tiny app runs on the real offline assets (:mod:`.app`), the FSDP2 fit script (:mod:`.fsdp_fit`)."""
