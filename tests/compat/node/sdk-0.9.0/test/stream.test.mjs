import * as adapter from '../adapter.mjs';
import { streamSuite } from '../../lib/suites/stream.mjs';

// 0.9.0 (and 0.11.6): createStream is an instance method.
streamSuite(adapter, { createStream: (iii, name, impl) => iii.createStream(name, impl) });
