"""Slicer's test runner entry for the DosePredict module (slicer_add_python_unittest)."""

import unittest

from DosePredict import DosePredictTest


class DosePredictModuleTest(unittest.TestCase):
    def test_module(self):
        test = DosePredictTest()
        test.runTest()


if __name__ == "__main__":
    unittest.main()
