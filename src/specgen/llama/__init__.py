"""Everything that touches llama.cpp or GGUF files: loading and decoding, header checks,
vocabulary compatibility, cost calibration, chat templates."""
