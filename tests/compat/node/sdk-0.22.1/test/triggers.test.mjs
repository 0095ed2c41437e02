import * as adapter from '../adapter.mjs';
import { customTriggerSuite } from '../../lib/suites/triggers.mjs';

customTriggerSuite(adapter);
