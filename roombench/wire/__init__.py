"""The wire: WebSocket frames, Engine.IO/Socket.IO packets, the server profile."""
