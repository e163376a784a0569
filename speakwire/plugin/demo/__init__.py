"""``speakwire demo``: a scripted voice agent speaking through SpeakwireTTSService into WebRTC.

- :class:`DemoServer` (``app.py``): the page, ``POST /offer`` and one agent per peer;
- :class:`DemoAgent` (``agent.py``): a simulated LLM's tokens through the TTS service (embedded
  local server) into a paced WebRTC track, with live figures;
- :func:`run_headless` (``headless.py``): the same conversation received by an aiortc peer into a WAV.
"""

from speakwire.plugin.demo.agent import DemoAgent, Figures
from speakwire.plugin.demo.app import DemoServer
from speakwire.plugin.demo.headless import HeadlessReport, run_headless

__all__ = ["DemoAgent", "DemoServer", "Figures", "HeadlessReport", "run_headless"]
