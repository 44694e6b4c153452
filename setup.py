"""Package build step (metadata lives in pyproject.toml): compile the shipped agents into
bypass/prebuilt, so that the first `bypass run` of a shipped agent starts at once instead of
spending its first half minute in the C compiler (issue 14)."""

import os
import subprocess
import sys

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

PREBUILD = "import sys, pathlib, bypass.build as b; b.prebuild_shipped(pathlib.Path(sys.argv[1]))"
MAN_PAGE = os.path.join("build", "man", "bypass.1")
WRITE_MAN_PAGE = "import sys, bypass.manpage as m; open(sys.argv[1], 'w').write(m.render())"


class BuildPyWithAgents(build_py):
    def run(self):
        super().run()
        # A fresh interpreter on the package just built: its files are what the fingerprint
        # hashes, so the prebuilt agents match the installed package exactly.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [self.build_lib, os.environ.get("PYTHONPATH")])))
        os.makedirs(os.path.dirname(MAN_PAGE), exist_ok=True)
        subprocess.run([sys.executable, "-c", WRITE_MAN_PAGE, MAN_PAGE], env=env, check=True)
        if self.editable_mode:          # an editable install builds each agent on its first run
            return
        done = subprocess.run([sys.executable, "-c", PREBUILD, os.path.join(self.build_lib, "bypass")], env=env)
        if done.returncode != 0:
            print("bypass: the shipped agents were not prebuilt (see above); each is built on its first run",
                  file=sys.stderr)


class WithAgents(Distribution):
    """The wheel carries machine code (the prebuilt agents): tag it for this platform, not 'any'."""

    def has_ext_modules(self):
        return True


# bypass(1), written from the argparse definitions by the build step above
setup(cmdclass={"build_py": BuildPyWithAgents}, distclass=WithAgents,
      data_files=[("share/man/man1", [MAN_PAGE])])
