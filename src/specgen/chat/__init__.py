"""`specgen chat`: the conversation (turns, commands, KV reuse) and its live screen."""
