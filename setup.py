# The compiled kernel (rolling checksum + CRC-64) lives in chunked/_native.c;
# setuptools needs a setup.py to declare C extensions.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("chunked._native", ["chunked/_native.c"], extra_compile_args=["-O3"]),
    ]
)
