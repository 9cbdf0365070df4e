"""A load generator for lfm-audio that speaks only the public protocol (OpenAI Realtime over a WebSocket, or
WebRTC through aiortc) and starts the server only through its command line. Run it with `python -m loadtests`;
README.md says how. Nothing here imports the server's packages, so it measures whatever build it is pointed at."""
