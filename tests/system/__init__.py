"""install.sh, the systemd unit and the udev rule, tested with real tools.

test_unit_file.py runs wherever systemd-analyze and shellcheck are installed. The tests marked
`system` need root, overlayfs and (for test_service.py) systemd-nspawn; they skip elsewhere with
the reason. See ../../../shared/notes/test-harness.md §6-§8 for the recipes they follow.
"""
