"""speakwire: streaming, interruptible, speed-controlled TTS for voice agents.

Layers (dependencies point one way): ``plugin -> transport -> protocol, dsp`` and
``server -> protocol, dsp``. ``dsp`` and ``protocol`` are pure: no I/O, no asyncio.
"""

__version__ = "0.1.0"
