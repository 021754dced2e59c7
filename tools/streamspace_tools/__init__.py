"""StreamSpace operator tools: streamspace-migrate, streamspace-admin and streamspace-dev."""
