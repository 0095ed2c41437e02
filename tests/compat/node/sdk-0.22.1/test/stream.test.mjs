import * as adapter from '../adapter.mjs';
import { createStream } from 'iii-sdk/helpers';
import { streamSuite } from '../../lib/suites/stream.mjs';

// 0.22.1: createStream(iii, name, impl) is a free function of the `iii-sdk/helpers` export.
streamSuite(adapter, { createStream });
