"""Slicer's test runner entry for the OutcomeModel module (slicer_add_python_unittest)."""

import unittest

from OutcomeModel import OutcomeModelTest


class OutcomeModelModuleTest(unittest.TestCase):
    def test_module(self):
        test = OutcomeModelTest()
        test.runTest()


if __name__ == "__main__":
    unittest.main()
