"""StreamSpace dispatcher: claims pending commands and routes each to the replica holding its agent."""
