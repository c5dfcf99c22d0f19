"""zimage-bot, the Discord side: slash commands, the job queue, delivery (``python -m bot``)."""
