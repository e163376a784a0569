"""speakwire.server."""
