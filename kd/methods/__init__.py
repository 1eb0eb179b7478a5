"""Every distillation method, one file each; importing this package registers them in METHODS."""
from kd.methods import kd  # noqa: F401
from kd.methods import deit  # noqa: F401
from kd.methods import ipot, remd, dml, one  # noqa: F401,E401
from kd.methods import ft, ab, vid, ofd, reviewkd, srrl, srd, crd  # noqa: F401,E401
from kd.methods import dkd, bss, fitnet, at, fsp, nst, sp, pkt, cc, rkd  # noqa: F401,E401
