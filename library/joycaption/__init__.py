"""JoyCaption: prompts, local LLaVA and OpenAI-compatible backends, and the dual-caption job."""
