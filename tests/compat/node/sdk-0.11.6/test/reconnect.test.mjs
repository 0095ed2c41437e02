import * as adapter from '../adapter.mjs';
import { reconnectSuite } from '../../lib/suites/reconnect.mjs';

reconnectSuite(adapter);
