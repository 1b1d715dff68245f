"""Multi-device and multi-host training helpers. (Being written under issue 7.)"""
