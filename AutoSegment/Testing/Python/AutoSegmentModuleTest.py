"""Slicer's test runner entry for the AutoSegment module (slicer_add_python_unittest)."""

import unittest

from AutoSegment import AutoSegmentTest


class AutoSegmentModuleTest(unittest.TestCase):
    def test_module(self):
        test = AutoSegmentTest()
        test.runTest()


if __name__ == "__main__":
    unittest.main()
