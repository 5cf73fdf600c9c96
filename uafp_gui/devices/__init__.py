"""Hardware behind small interfaces: `interfaces` (the LED array, camera capabilities, device errors),
`illuminate_connection` + `illuminate` (the serial LED-array driver), `mm_led` (the LED array as a
Micro-Manager device), `micromanager` (a pymmcore-plus core from a configuration), `pydevices` (the
one private pymmcore-plus access). Simulated hardware lives in `uafp_gui.simulated`, never imported here."""
