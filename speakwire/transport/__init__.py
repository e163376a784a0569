"""speakwire.transport."""
