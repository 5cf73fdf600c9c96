"""The application layer both front ends (GUI and CLI) use, Qt-free: opening a microscope from a
choice (`microscope`), the one live-reconstruction driver (`reconstruction`) and acquisition
sessions (`acquisition`). Front ends only turn their inputs into these calls and show the results."""
