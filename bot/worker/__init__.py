"""The bot's side of the GPU worker: a socket client and a process supervisor."""
