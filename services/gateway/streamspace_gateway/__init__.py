"""StreamSpace gateway: REST API, agent WebSocket endpoint and the agent registry of this replica."""
