"""specgen: local speculative generation over llama.cpp."""

__version__ = "0.1.0"
