"""The Anthropic Messages API, translated into the OpenAI chat layer's internal request."""
