"""What the tests share (fakes, live gateways, upstream servers, fixtures' data); test files
import helpers from here and never from each other."""
