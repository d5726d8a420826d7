"""What a reply must look like, and how to read it: JSON under a schema, tool calls in a model's own markup.

Below the front ends: it reads chat templates (llama/chat_template.py) and the library's errors, and uses
llama-cpp-python's schema converter.
"""
