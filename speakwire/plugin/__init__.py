"""speakwire.plugin."""
