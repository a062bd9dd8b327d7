"""Entry point for ``python -m core``."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["users"]:  # the user file needs no model, torch or image library
        from core.auth import users_main

        sys.exit(users_main(sys.argv[2:]))
    from core.cli import main

    sys.exit(main())
