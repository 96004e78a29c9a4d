"""D0 / IEC 62056-21 OBIS text meters other than the eBZ: push telegrams without a checksum
(EasyMeter Q3D, Logarex) and STX/ETX frames with a BCC (mode C readouts, ZPA).

Pure code: bytes in, frames, telegrams and verdicts out. The reader and the uplink wire it
(agent/meter/protocols.py); firmware-notes/d0.md explains the rules and their evidence.
"""
