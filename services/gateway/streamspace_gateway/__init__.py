"""StreamSpace gateway: REST API, agent WebSocket endpoint and the AgentHub of this replica."""
