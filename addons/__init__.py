"""mitmproxy addons for the web channel (one concern per module). Not built yet."""
